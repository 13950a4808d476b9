"""Which groups a recurrence reads with OBSPA's compensation: their sensitivity probes are compensated.

The sensitivity allocation (:mod:`spa_compiler.ranking`) prices every group by probing it alone, and its
probes measure *plain* removal: OBSPA's solves cost far more than a masked run on wide convolutional layers
(deepcut: 57 of 70 s), and on the feed-forward taggers compensated probes allocated no better (they lost
oskut-ws-augment-60p and oskut-scads, docs/realmodels.md).  A recurrent layer is where that price is most
wrong.  What a removal changes at one step reaches every later step through the recurrence (the kept
units' states move too), so the error plain removal leaves grows with the sequence, and OBSPA's
compensation, which re-solves the layer's input weights ``W`` and recurrent weights ``R`` on the states
it reads, is what keeps it small.  On rawi at MACs x0.75, its embedding group alone at the plan's width
keeps 0.845 of the diacritics removed plainly and 0.993 compensated, the second LSTM's hidden units
0.938 and 0.961: plain probes priced the groups the recurrences read by an error the written model does
not have, and the allocation they made measured 0.13 against 0.07 for the global plan.

So a group read by a recurrent layer that OBSPA compensates (onnxruntime's ``DynamicQuantizeLSTM``:
its input features through ``W``, its hidden units through ``R``) is probed with the compensation the
plan will write; the masked run of that probe carries it through every time step.  Those solves are small
(a few consumers of at most a few hundred units each).  Float LSTM/GRU/RNN layers are left to magnitude by
OBSPA (no compensation), so their groups keep plain probes.
"""
from __future__ import annotations

from ..analysis import CONSUMER, DependencyAnalysis
from ..analysis.rules import rule_for
from ..analysis.rules.recurrent import Recurrent
from ..ir import all_nodes


def compensated_recurrence(node) -> bool:
    """Whether *node* is a recurrent layer (the rule table's :class:`Recurrent`) that OBSPA compensates."""
    rule = rule_for(node)
    return isinstance(rule, Recurrent) and rule.is_consumer_layer(node)


def compensated_recurrent_groups(graph, analysis: DependencyAnalysis) -> frozenset[int]:
    """Ids of the prunable groups that a recurrent layer OBSPA compensates reads (through ``W`` or ``R``)."""
    nodes = {node.name: node for node in all_nodes(graph)}
    return frozenset(group.id for group in analysis.prunable_groups
                     if any(param.node in nodes and compensated_recurrence(nodes[param.node])
                            for param in group.params_by_role(CONSUMER)))
