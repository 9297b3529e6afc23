"""The Python client SDK: producer, consumer and admin, following leaders on their own."""
