from funnel.cli import entry

if __name__ == "__main__":  # not when a spawned child process imports it
    entry()
