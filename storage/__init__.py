"""Database access and audio files."""
