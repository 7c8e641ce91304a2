"""Incident response: incidents with a timeline, on-call schedules, escalation, post-mortems.

See docs/incidents.md. The pieces: :mod:`.service` (lifecycle and the alert-group listener),
:mod:`.oncall` (rotation arithmetic), :mod:`.directory` (schedules, profiles, policies),
:mod:`.escalation` (paging until acknowledged), :mod:`.links` (signed acknowledge links),
:mod:`.postmortem` (the draft), :mod:`.reports` (MTTA/MTTR, weekly review).
"""
