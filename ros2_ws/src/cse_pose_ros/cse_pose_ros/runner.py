"""The shared ``main`` of the package's executables: init rclpy, spin one node, shut down cleanly.

Ctrl-C (SIGINT) ends every executable with status 0 and no traceback, whenever it arrives: while the modules
are imported, while the model loads, while frames are served, or during the shutdown itself. Five things make
that so:

* the entry points (:func:`pose_node_main`, :func:`tabletop_mask_main`) install the handler
  (:func:`quiet_sigint`) before importing the node module, so an early Ctrl-C does not interrupt an import
  with a traceback;
* rclpy's own handler (installed by ``rclpy.init``) shuts the context down and then calls the Python handler
  it replaced, i.e. ours: the first SIGINT raises :class:`Interrupted` once, later ones are ignored, so the
  delayed ``KeyboardInterrupt`` can no longer land inside ``destroy_node``; if it still lands in the
  shutdown code, the shutdown is simply run again;
* errors the executor raises because the context went away under it (``RuntimeError`` from
  ``take_message``, ``InvalidHandle``) count as a shutdown when rclpy is no longer ok;
* the interruption is an :class:`Interrupted`, not a plain ``KeyboardInterrupt`` (see there);
* native imports that must not be interrupted (open3d), and the executor's construction, run in
  :func:`sigint_deferred` blocks.
"""

from __future__ import annotations

import gc
import signal
import sys
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager


class Interrupted(KeyboardInterrupt):
    """What the first SIGINT raises: a ``KeyboardInterrupt`` (caught as one), of its own class because CPython
    remembers an exact ``KeyboardInterrupt`` leaving code that a native module ran through ``PyRun_String``
    (rclpy's pybind11 module links it) and, even when it was caught later, makes the process kill itself with
    SIGINT at exit: status -2 and no output, 9 of 98 Ctrl-C 0.3-0.6 s into start-up with plain
    ``KeyboardInterrupt``, 0 of 40 with this class."""


class _Interrupts:
    """Process-wide SIGINT policy: the first SIGINT raises :class:`Interrupted`, later ones are ignored; inside
    :meth:`deferred` blocks the first one is held and raised when the outermost block ends."""

    def __init__(self) -> None:
        self.count = 0
        self.installed = False
        self.quiet = False
        self.deferring = 0
        self.pending = False

    def install(self) -> None:
        """Make :meth:`handle` the Python SIGINT handler (main thread only; idempotent)."""
        if not self.installed:
            signal.signal(signal.SIGINT, self.handle)
            self.installed = True

    def ignore_from_now(self) -> None:
        """Later SIGINTs do nothing (called once shutting down has begun)."""
        self.quiet = True

    def handle(self, signum, frame) -> None:
        self.count += 1
        if self.count == 1 and not self.quiet:
            self.quiet = True
            if self.deferring:
                self.pending = True
            else:
                raise Interrupted

    @contextmanager
    def deferred(self) -> Iterator[None]:
        """Hold the interruption while the block runs; raise it (in place of anything the block raised) once
        the outermost block is done."""
        self.deferring += 1
        try:
            yield
        finally:
            self.deferring -= 1
            if self.pending and not self.deferring:
                self.pending = False
                raise Interrupted


_INTERRUPTS = _Interrupts()


def sigint_deferred() -> AbstractContextManager[None]:
    """A block a Ctrl-C must not interrupt: the interruption (see :func:`quiet_sigint`) comes right after it.

    For imports of native modules: open3d's module init turns the :class:`Interrupted` into an ``ImportError``
    and leaves a half-initialised library whose teardown ends the process with status 1 (3 of 9 Ctrl-C
    0.3-0.7 s into the pose node's start-up). Python runs signal handlers in the main thread whichever thread
    the signal reached, so the hold is in the handler, not in the signal mask.
    """
    return _INTERRUPTS.deferred()


def quiet_sigint() -> None:
    """From now on the first SIGINT raises :class:`Interrupted` once and later ones are ignored (main thread).

    For executables with their own spin loop: call it before ``rclpy.init``, treat :func:`is_shutdown`
    exceptions as a normal end, and finish with :func:`shut_down`.
    """
    _INTERRUPTS.install()


def pose_node_main() -> int:
    """Entry point ``cse_pose_node`` and ``python -m cse_pose_ros``: quiet Ctrl-C first, then the node."""
    return _quiet_main("node")


def tabletop_mask_main() -> int:
    """Entry point ``tabletop_mask_node`` and ``python -m cse_pose_ros.tabletop_mask``."""
    return _quiet_main("tabletop_mask")


def _quiet_main(module: str) -> int:
    """:func:`quiet_sigint`, then import ``cse_pose_ros.<module>`` and return its ``main()``."""
    import importlib

    quiet_sigint()
    try:
        return importlib.import_module(f"{__package__}.{module}").main()
    except KeyboardInterrupt:  # before run_node took over: during the imports or main's own set-up
        return 0


def run_node(factory: Callable[[], object], name: str, args: list[str] | None = None) -> int:
    """Spin the node ``factory()`` builds until shutdown; return the exit status.

    Ctrl-C and external shutdown end with 0; a ``ValueError`` from the constructor (invalid parameters, a
    missing dependency) is logged as one fatal line without a traceback and ends with 2.
    """
    quiet_sigint()
    node = None
    status = 0
    try:
        import rclpy

        rclpy.init(args=args if args is not None else sys.argv)
        node = factory()
        # Everything built at start-up (models, message classes, buffers) lives as long as the node: keep it out
        # of the cyclic GC's full passes, which otherwise add tens of ms to some frames (measured by make bench).
        gc.freeze()
        # rclpy.spin would build its executor lazily; a Ctrl-C inside Executor.__init__ (before it sets
        # _sigint_gc) leaves a half-built executor whose __del__ prints an AttributeError at exit (1 of 20
        # Ctrl-C right at "ready" in the SIGINT test): build it where the interruption waits.
        with sigint_deferred():
            from rclpy.executors import SingleThreadedExecutor

            executor = SingleThreadedExecutor(context=getattr(node, "context", None))
        rclpy.spin(node, executor)
    except ValueError as exc:
        import rclpy.logging

        rclpy.logging.get_logger(name).fatal(str(exc))
        status = 2
    except BaseException as exc:
        if not is_shutdown(exc):
            raise
    finally:
        shut_down(node)
    return status


def _rclpy_ok() -> bool:
    rclpy = sys.modules.get("rclpy")
    return rclpy is not None and rclpy.ok()


def is_shutdown(exc: BaseException) -> bool:
    """Whether ``exc`` is how a Ctrl-C or an external shutdown surfaced (not a failure of the node)."""
    if isinstance(exc, KeyboardInterrupt):
        return True
    executors = sys.modules.get("rclpy.executors")
    if executors is not None and isinstance(exc, executors.ExternalShutdownException):
        return True
    exceptions = sys.modules.get("rclpy.exceptions")
    lost_context = (RuntimeError,) + ((exceptions.InvalidHandle,) if exceptions is not None else ())
    return isinstance(exc, lost_context) and not _rclpy_ok()


def shut_down(node) -> None:
    """Destroy the node and shut rclpy down; a Ctrl-C arriving meanwhile does not interrupt it."""
    _INTERRUPTS.ignore_from_now()
    rclpy = sys.modules.get("rclpy")
    for _ in range(3):  # a KeyboardInterrupt already pending when the handler went quiet lands at most once
        try:
            if node is not None:
                node.destroy_node()
                node = None
            if rclpy is not None:
                rclpy.try_shutdown()
            return
        except KeyboardInterrupt:
            continue
