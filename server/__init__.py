"""Parley's HTTP server, WebRTC signalling, call sessions and reply pipeline."""
