"""Python ``logging`` -> rclpy logger, so the ROS-free packages' messages reach the console and /rosout.

``cse_pose`` (pipeline, inference) logs through the standard ``logging`` module; in the node,
:func:`forward_python_logging` attaches a handler to the ``cse_pose`` logger that re-emits every record on
the node's logger (child named after the Python logger), with the same severity, at most once per
``throttle_s`` per message template (the unformatted ``record.msg``), so a failure repeated every frame
is one line per period.
"""

from __future__ import annotations

import logging
import time
from typing import Any


class RosLogHandler(logging.Handler):
    """Forward ``logging`` records to an rclpy logger, rate-limited per message template."""

    def __init__(self, ros_logger: Any, throttle_s: float = 5.0) -> None:
        super().__init__(logging.DEBUG)
        self.ros_logger = ros_logger
        self.throttle_s = float(throttle_s)
        self._last: dict[tuple[str, str], float] = {}

    def emit(self, record: logging.LogRecord) -> None:
        key = (record.name, str(record.msg))
        now = time.monotonic()
        last = self._last.get(key)
        if last is not None and now - last < self.throttle_s:
            return
        self._last[key] = now
        try:
            text = record.getMessage()
            if record.exc_info and record.exc_info[1] is not None:
                text += f" ({type(record.exc_info[1]).__name__}: {record.exc_info[1]})"
            logger = self.ros_logger.get_child(record.name.replace(".", "_"))
            if record.levelno >= logging.ERROR:
                logger.error(text)
            elif record.levelno >= logging.WARNING:
                logger.warning(text)
            elif record.levelno >= logging.INFO:
                logger.info(text)
            else:
                logger.debug(text)
        except Exception:  # noqa: BLE001 - logging must never break the caller
            self.handleError(record)


def forward_python_logging(name: str, ros_logger: Any, throttle_s: float = 5.0) -> RosLogHandler:
    """Attach a :class:`RosLogHandler` to the Python logger ``name`` (INFO and above) and return it;
    detach it with ``logging.getLogger(name).removeHandler(handler)``."""
    handler = RosLogHandler(ros_logger, throttle_s)
    py_logger = logging.getLogger(name)
    py_logger.addHandler(handler)
    if py_logger.level == logging.NOTSET or py_logger.level > logging.INFO:
        py_logger.setLevel(logging.INFO)
    py_logger.propagate = False  # the handler reports it; no second copy on stderr via the root logger
    return handler
