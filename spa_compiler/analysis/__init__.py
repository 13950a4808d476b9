"""Analysis passes: compute facts about the graph, change nothing."""
from .dependency import DependencyAnalysis, Group, analyze
from .effects import CONSUMER, PASSIVE, PRODUCER, ParamSlice, Space

__all__ = ["DependencyAnalysis", "Group", "analyze", "ParamSlice", "Space", "PRODUCER", "CONSUMER", "PASSIVE"]
