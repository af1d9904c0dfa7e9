"""What every job runs on: devices and precision, processes, files, errors, input checks, figures."""
