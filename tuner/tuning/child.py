"""One measurement process of `tuner tune --workers N / --gpus ...` (tuner.tuning.parallel).

Runs flow.tune on the request it is given (JSON on stdin: on the command line a database
password would show in `ps`) and prints its results as one JSON
line on stdout. Exit codes as `tuner tune`'s: 0 done, 2 a user error, 130 interrupted (the
configs in flight are queued again), 1 anything else (the traceback on stderr).
"""

from __future__ import annotations

import json
import os
import sys

from tuner.tuning.parallel import PROGRESS_ENV


def main() -> int:
    from tuner.errors import UserError
    from tuner.tuning import flow

    req = flow.TuneRequest(**json.loads(sys.stdin.readline()))
    try:
        if os.environ.get(PROGRESS_ENV):  # a line per key on stdout, before the results' JSON line
            from tuner.report import tune_progress

            with tune_progress(total=req.trials, share=True) as (on_key, on_event):
                results = flow.tune(req, on_key=on_key, on_event=on_event)
        else:
            results = flow.tune(req)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    print(json.dumps([flow.result_as_dict(r) for r in results]), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
