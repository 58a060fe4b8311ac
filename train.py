"""Thin shim: ``python train.py model=X reg=Y data=Z ...`` (the code lives in ``mmfusion.train``)."""

from mmfusion.train import main

if __name__ == "__main__":
    main()
