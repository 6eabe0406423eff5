"""SKD: the relation prompts and their filters, the event pool, the critic input and cut-offs, the triples pipeline."""
