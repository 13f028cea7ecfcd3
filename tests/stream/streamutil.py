"""Constants of the streaming tests (a uniquely named module: `from conftest import ...` would resolve to whichever
tests/*/conftest.py was imported first when several test folders run in one session)."""

LOAD = 40  # small load size: a 60x80 frame -> 40x53, a 9x12 patch grid at stride 4 (fast on 2 cores)
