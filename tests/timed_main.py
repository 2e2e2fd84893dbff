"""The command line (`synermix_hf.cli.train.main`) as a script that also reports, as its last line on stdout, how long
importing it took and how long it then ran: `python tests/timed_main.py ARGS...` (or under `accelerate launch`).

Used by tests/test_cli_rough_edges.py to tell a failure that adds little to the imports from one that waits (the Hub
client's retries), on a machine of any speed.
"""

import sys
import time

started = time.monotonic()
import synermix_hf.cli.train as script  # noqa: E402

imported = time.monotonic()
status = script.main(sys.argv[1:])
print(imported - started, time.monotonic() - imported, flush=True)
sys.exit(status)
