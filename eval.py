"""Thin shim: ``python eval.py ckpt_path=... [eval.corrupt=drop_text]`` (code in ``mmfusion.eval``)."""

from mmfusion.eval import main

if __name__ == "__main__":
    main()
