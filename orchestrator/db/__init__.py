"""The only package that talks SQL. Every statement is a function taking the caller's
connection (the caller owns the transaction) and returning plain frozen dataclasses."""
