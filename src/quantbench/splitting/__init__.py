"""quantbench.splitting."""
