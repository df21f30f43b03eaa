"""A module that takes `LONGVID_SLOW_IMPORT_S` seconds (default 3) to import, like a decoder stack on a loaded
machine (av, numpy, torch...): for the test that a decode timeout does not count the child's start-up."""
import os
import time

time.sleep(float(os.environ.get("LONGVID_SLOW_IMPORT_S", "3")))


def quick(x):
    return x * 2
