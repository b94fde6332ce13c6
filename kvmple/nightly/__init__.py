"""Nightly kernel validation: fetch -> apply -> build -> boot-test -> install -> campaign ->
compare -> verdict/notify, each step's state and log kept in a night directory so a night
resumes after a host reboot and re-running it is idempotent.

    config = load_config(path)
    result = run_night(config, night_id=None)   # NightResult: verdict, exit code, outputs
"""
