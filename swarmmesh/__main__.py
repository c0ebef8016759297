"""`python -m swarmmesh` runs the CLI; `cluster up` starts nodes this way."""

from swarmmesh.cli import main

if __name__ == "__main__":
    main()
