"""Fault plans, matching and actions (sans-IO decisions), and the chaos-session runner."""
