#!/usr/bin/env python3
"""Whitespace and width rules of the C sources (nginx style): no tabs, no
trailing spaces, at most 80 characters a line.  Prints offending lines and
exits 1 if there are any."""

import subprocess
import sys

PATTERNS = ["common/*.[ch]", "memqd/*.[ch]", "ngx_memq/*.[ch]",
            "bench/*.[ch]", "tests/unit/*.c", "tests/fuzz/*.c"]

files = subprocess.run(["git", "ls-files"] + PATTERNS, capture_output=True,
                       text=True, check=True).stdout.split()
bad = 0
for name in files:
    with open(name, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            line = line.rstrip("\n")
            why = ("tab" if "\t" in line else
                   "trailing space" if line != line.rstrip() else
                   "%d characters" % len(line) if len(line) > 80 else None)
            if why:
                print("%s:%d: %s" % (name, n, why))
                bad += 1
print("style: %d files, %d problems" % (len(files), bad))
sys.exit(1 if bad else 0)
