"""Lower CPU priority for model work, so the audio path never waits for it.

On a small machine the models (Whisper, the language model, piper) keep every core busy
while a reply is prepared, and the threads that move audio (the event loop, each call's
segmenter) would queue behind them: a caller's speech would reach the segmenter late and a
barge-in would stop the reply late. Model threads run at a higher nice value, so whenever
audio work is ready it runs first; with nothing else to do, the models still get every core.

Threads inherit the nice value of the thread that creates them, so the thread pools the
model libraries start (OpenMP, onnxruntime, ggml) are lowered too, as long as the models
are loaded and run on threads that lowered themselves first.
"""

from __future__ import annotations

import logging
import os
import threading

logger = logging.getLogger(__name__)

# Nice value added to model threads: about a tenth of the CPU share of a normal thread
# when both want to run.
MODEL_NICENESS = 10


def lower_this_thread(niceness: int = MODEL_NICENESS) -> None:
    """Raise the calling thread's nice value by niceness (Linux: nice is per thread)."""
    if niceness <= 0 or not hasattr(os, "setpriority"):
        return
    thread_id = threading.get_native_id()
    try:
        current = os.getpriority(os.PRIO_PROCESS, thread_id)
        os.setpriority(os.PRIO_PROCESS, thread_id, min(19, current + niceness))
    except OSError as exc:
        # Only a scheduling hint: the server works without it.
        logger.warning("could not lower the priority of model thread %d: %s", thread_id, exc)
