"""`python -m app` runs the same command line as the `encoder-serve` script."""

from app.cli import main

if __name__ == "__main__":
    main()
