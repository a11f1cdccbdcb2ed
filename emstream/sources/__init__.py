"""Where frames come from: folder, ZeroMQ, replay, simulate, and the file-format readers."""
