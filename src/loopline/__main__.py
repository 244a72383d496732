"""``python -m loopline``: the same command as the ``loopline`` script."""

from loopline.cli import main

if __name__ == "__main__":
    main()
