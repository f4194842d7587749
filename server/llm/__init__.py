"""Language model backends behind one streaming chat interface."""
