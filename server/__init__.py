"""Parley's HTTP server, WebRTC signalling, call sessions and reply pipeline."""

import os

# numpy's OpenBLAS starts one thread per core by default. On a 2-core machine whose cores
# were busy with other work, its two threads made the MiniLM embedder 4 to 20 times slower,
# and the server always runs beside Whisper, piper and llama.cpp threads. With one thread a
# sentence embeds as fast on an idle machine (about 13 ms). OpenBLAS reads this variable
# when numpy is first imported, which in `parley serve` happens after this package loads.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
