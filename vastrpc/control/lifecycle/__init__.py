"""The endpoint lifecycle: what the control service decides and does between a deploy and a teardown.

``endpoints`` registers revisions (``tiers`` classifies each against the live one),
provisions them and follows every worker's state; ``rollout`` brings a new revision to
running workers; ``autoscaler`` sizes endpoints from their load; ``reaper`` tears down what
no client used for its TTL; ``stopping`` handles teardown and the service's own start and
stop; ``leadership`` decides which of several services runs the loops; ``rules`` holds the
small rules they share.
"""

from vastrpc.control.lifecycle.autoscaler import Autoscaler
from vastrpc.control.lifecycle.endpoints import Lifecycle, Registration
from vastrpc.control.lifecycle.leadership import Leadership
from vastrpc.control.lifecycle.reaper import Reaper

__all__ = ["Autoscaler", "Leadership", "Lifecycle", "Reaper", "Registration"]
