from __future__ import annotations

import pytest
from cryptography.fernet import Fernet

from hub.encryption import DecryptionError, FieldEncryptor


def test_round_trip_and_no_plaintext_in_token() -> None:
    enc = FieldEncryptor([Fernet.generate_key().decode()])
    token = enc.encrypt("ann@example.com")
    assert "@" not in token  # URL-safe base64: no trace of the address (a short word can turn up by chance)
    assert enc.decrypt(token) == "ann@example.com"
    assert enc.decrypt_json(enc.encrypt_json({"fn": "ann", "zp": "94105"})) == {"fn": "ann", "zp": "94105"}


def test_rotation_reads_old_tokens_and_rewrites_them_under_the_new_key() -> None:
    old, new = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    token = FieldEncryptor([old]).encrypt("secret")
    rotated_reader = FieldEncryptor([new, old])
    assert rotated_reader.decrypt(token) == "secret"
    rotated = rotated_reader.rotate(token)
    assert FieldEncryptor([new]).decrypt(rotated) == "secret"


def test_wrong_key_is_a_clear_error() -> None:
    token = FieldEncryptor([Fernet.generate_key().decode()]).encrypt("x")
    with pytest.raises(DecryptionError, match="HUB_ENCRYPTION_KEY"):
        FieldEncryptor([Fernet.generate_key().decode()]).decrypt(token)


def test_database_errors_never_echo_statement_parameters() -> None:
    from sqlalchemy import text
    from sqlalchemy.exc import OperationalError

    from hub.db import create_db_engine

    engine = create_db_engine("sqlite://")
    try:
        with engine.connect() as conn, pytest.raises(OperationalError) as excinfo:
            conn.execute(text("SELECT * FROM missing WHERE email = :email"), {"email": "ann@example.com"})
    finally:
        engine.dispose()
    assert "ann@example.com" not in str(excinfo.value)
