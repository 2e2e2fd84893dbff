#!/usr/bin/env python
"""Train and evaluate an image classifier with SynerMix: the command line of `synermix_hf.cli.train`, run from a
checkout as Hugging Face's example scripts are (`python run_image_classification.py ...`,
`accelerate launch run_image_classification.py ...`). Installed, the same is `synermix-train`."""

import sys

from synermix_hf.cli.train import main

if __name__ == "__main__":
    sys.exit(main())
