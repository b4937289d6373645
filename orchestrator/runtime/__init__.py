"""The daemon: scheduler loop, worker pool, leader duties, one small module each."""
