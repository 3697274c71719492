"""What things are, as plain data: errors, file helpers, architecture configs. No torch, Pillow or numpy."""
