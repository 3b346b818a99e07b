"""The shared ``main`` of the package's executables: init rclpy, spin one node, shut down cleanly."""

from __future__ import annotations

import gc
import sys
from collections.abc import Callable


def run_node(factory: Callable[[], object], name: str, args: list[str] | None = None) -> int:
    """Spin the node ``factory()`` builds until shutdown; return the exit status.

    Ctrl-C and external shutdown end with 0; a ``ValueError`` from the constructor (invalid parameters) is
    logged as one fatal line without a traceback and ends with 2.
    """
    import rclpy
    from rclpy.executors import ExternalShutdownException

    rclpy.init(args=args if args is not None else sys.argv)
    node = None
    status = 0
    try:
        node = factory()
        # Everything built at start-up (models, message classes, buffers) lives as long as the node: keep it out
        # of the cyclic GC's full passes, which otherwise add tens of ms to some frames (measured by make bench).
        gc.freeze()
        rclpy.spin(node)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except ValueError as exc:
        rclpy.logging.get_logger(name).fatal(str(exc))
        status = 2
    finally:
        if node is not None:
            node.destroy_node()
        rclpy.try_shutdown()
    return status
