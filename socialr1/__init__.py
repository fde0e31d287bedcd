"""socialr1: trajectory-level GRPO with Social Information Processing (SIP) rewards."""
