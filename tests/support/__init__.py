"""Shared test support: tiny offline models, the loopback OpenAI-compatible server, the session's
Label Studio and Ray, the image-reading fake VLM judge, the bad-input corpus, content digests (imported as ``support.<module>``)."""
