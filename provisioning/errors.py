"""Errors of the provisioning package; each subclasses the agent's tree so the CLI reports them alike.

AgentError
└── ProvisioningError     identity, CA or enrolment problem (bad file, mismatch, refusal)
"""

from __future__ import annotations

from water_edge.core.errors import AgentError


class ProvisioningError(AgentError):
    """An identity, certificate-authority or enrolment operation cannot be done; says why."""
