"""Audio frames, voice activity detection, speech to text, text to speech and tracks."""
