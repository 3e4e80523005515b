"""Pure array math: each op is a forward/backward pair, no state."""
