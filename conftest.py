"""Settings for the whole suite (tests/ and the plugins' tests).

Hypothesis runs without its per-example deadline: an example that a busy CI machine
pauses for 200 ms would otherwise fail the test as "unreliable timings", though it
passes when replayed. The properties are about results; time is bounded where it
matters by the tests that measure it. The core-only run has no hypothesis.
"""

from __future__ import annotations

try:
    from hypothesis import settings
except ImportError:  # the core alone: no property tests run
    pass
else:
    settings.register_profile("eventmesh", deadline=None)
    settings.load_profile("eventmesh")
