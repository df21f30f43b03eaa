"""`python -m longvid ...`: the same as the `longvid` console command."""
from longvid.jobs.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
