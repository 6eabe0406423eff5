"""State shared by replicas on several machines, in a service made for it (Redis): the I/O behind the domain's
interfaces (engine/rewards/steps.py's StepStore). Only the server wires these in; the domain never imports them."""
