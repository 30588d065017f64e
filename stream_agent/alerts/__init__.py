"""Alerts: natural-language rules checked against the cameras, events, MQTT, Home Assistant.

Pure parts: :mod:`~stream_agent.alerts.rules` (the rule record and its store),
:mod:`~stream_agent.alerts.state` (the per-(rule, camera) state machine),
:mod:`~stream_agent.alerts.discovery` (Home Assistant payloads), :mod:`~stream_agent.alerts.topics`.
Stores: :mod:`~stream_agent.alerts.history` (SQLite events), :mod:`~stream_agent.alerts.outbox`
(the MQTT outbox), :mod:`~stream_agent.alerts.snapshots`. Around them:
:mod:`~stream_agent.alerts.gates` (motion, HOG person), :mod:`~stream_agent.alerts.mqtt` (the
aiomqtt shell), :mod:`~stream_agent.alerts.commands` (rule commands for MQTT and WebSocket) and
:mod:`~stream_agent.alerts.service` (the scheduler that ties them together behind the
:class:`~stream_agent.alerts.service.AlertEngine` and
:class:`~stream_agent.alerts.service.CameraBoardLike` protocols).
:func:`~stream_agent.alerts.build.build_alerts` assembles it all from an
:class:`~stream_agent.alerts.config.AlertsConfig`. See docs/alerts.md.
"""
