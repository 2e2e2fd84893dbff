"""Run run_image_classification.py and send SIGTERM to one of its processes at the end of step N.

    python tests/signal_at_step.py N RANK <synermix-train arguments>     # (under torchrun: every process runs it)
    SIGNAL=SIGINT TIMES=2 python tests/signal_at_step.py N RANK ...       # another signal, sent several times

The signal comes from a callback given to the script's own `run` (as a caller's callbacks are), at the end of step N,
in the process of global rank RANK only; everything else is the script as users run it.
"""

import functools
import os
import signal
import sys

from test_preemption import SignalAtStep  # this script's folder, tests/, is on its path

from synermix_hf.cli import train

sent = signal.Signals[os.environ.get("SIGNAL", "SIGTERM")]
times = int(os.environ.get("TIMES", "1"))
if sent == signal.SIGINT:  # as in a terminal, also when this process inherited SIGINT ignored (a background job)
    signal.signal(signal.SIGINT, signal.default_int_handler)
train.run = functools.partial(train.run, callbacks=[SignalAtStep(int(sys.argv[1]), int(sys.argv[2]), sent, times)])
sys.exit(train.main(sys.argv[3:]))
