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
        self.saved: tuple[int, bool] | None = None  # the logger's (level, propagate) before forwarding
        self.unpropagated: list[logging.Logger] = []  # child loggers whose propagation we turned on

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
    :func:`stop_forwarding` detaches it and restores the logger's level and propagation."""
    handler = RosLogHandler(ros_logger, throttle_s)
    py_logger = logging.getLogger(name)
    handler.saved = (py_logger.level, py_logger.propagate)
    # Records of ``name.child`` reach the handler by propagation. A process that imported ``launch`` creates
    # every later logger with propagate=False (launch's LaunchLogger class): turn it back on for ours.
    for child in _children(name):
        if not child.propagate:
            child.propagate = True
            handler.unpropagated.append(child)
    py_logger.addHandler(handler)
    if py_logger.level == logging.NOTSET or py_logger.level > logging.INFO:
        py_logger.setLevel(logging.INFO)
    py_logger.propagate = False  # the handler reports it; no second copy on stderr via the root logger
    return handler


def stop_forwarding(name: str, handler: RosLogHandler) -> None:
    """Undo :func:`forward_python_logging`."""
    py_logger = logging.getLogger(name)
    py_logger.removeHandler(handler)
    for child in handler.unpropagated:
        child.propagate = False
    handler.unpropagated.clear()
    if handler.saved is not None:
        py_logger.setLevel(handler.saved[0])
        py_logger.propagate = handler.saved[1]


def _children(name: str) -> list[logging.Logger]:
    """The existing loggers below ``name`` (``name.*``)."""
    prefix = name + "."
    return [lg for key, lg in logging.Logger.manager.loggerDict.items()
            if key.startswith(prefix) and isinstance(lg, logging.Logger)]
