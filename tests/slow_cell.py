"""A grid cell that pauses one second after saving each epoch's state, for tests/test_launch.py: submitit's local
executor runs it in another process, and the test kills it mid-run with many seconds to spare instead of racing a
tiny run that may finish first (job.cancel()'s SIGINT is ignored under a background shell)."""
import os
import time
from pathlib import Path

import core.train
from core.launch import GridCell


class SlowGridCell(GridCell):
    def __call__(self, kind: str, config: dict) -> str:
        Path(os.environ["SLOW_CELL_PID_FILE"]).write_text(str(os.getpid()))  # the test kills this process
        save = core.train.EpochState.save

        def save_then_pause(state, *args, **kwargs):
            save(state, *args, **kwargs)
            time.sleep(1.0)

        core.train.EpochState.save = save_then_pause
        return super().__call__(kind, config)
