"""`pyanom serve` with faults planted in its models, for tests/serve/test_faults.py:

    python -P tests/serve/fault_server.py serve MODEL --port P ...   (the arguments of `pyanom serve`)

Every model it loads (at start and on a reload) raises on an image that is all black (mean below
0.02) and takes SLOW_S seconds longer on a batch holding an image that is all white (mean above
0.98): the detector failure and the slow model of the fault tests. Any other image is scored as
by `pyanom serve` itself.
"""

import sys
import time

import pyanom.serve.run as run
from pyanom.cli import main

SLOW_S = 0.5
_open_model = run.open_model


def open_model_with_faults(path, **kwargs):
    det = _open_model(path, **kwargs)
    predict = det.predict

    def predict_with_faults(images, **kw):
        means = images.reshape(len(images), -1).mean(1)
        if (means < 0.02).any():
            raise RuntimeError("planted fault: this detector breaks on all-black images")
        if (means > 0.98).any():
            time.sleep(SLOW_S)
        return predict(images, **kw)

    det.predict = predict_with_faults
    return det


run.open_model = open_model_with_faults
sys.exit(main(sys.argv[1:]))
