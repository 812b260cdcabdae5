"""The key store (careledger/keystore.py, ADR 0037) on a real SoftHSM2 token (Debian's
softhsm2, installed by deploy/bootstrap.sh): keys made in the token stay there, data
keys survive a restart of the process, a wrapped key changed or moved to another
patient does not unwrap, a destroyed key is gone from the key file's bytes, and every
unwrap is counted."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import uuid
from pathlib import Path

import pkcs11
import pytest
from pkcs11 import Attribute

from careledger.keyrows import KeyRow
from careledger.keystore import KeyStore, KeyStoreError, TokenConfig, local_token
from tests.softhsm import softhsm_dir


@pytest.fixture(scope="module")
def run_dir() -> Path:
    """The process's SoftHSM directory (SoftHSM reads its configuration once per
    process: every module of the run shares it, each test a token of its own)."""
    return softhsm_dir()


@pytest.fixture
def token(run_dir: Path) -> TokenConfig:
    return local_token(run_dir, f"t{uuid.uuid4().hex[:12]}")


def test_a_data_key_survives_a_restart_of_the_process(token: TokenConfig, run_dir: Path) -> None:
    with KeyStore(token, create=True) as store:
        lookup = store.lookup("urn:oid:1.2.3", "MRN-000042")
        made = store.data_key(lookup, "ingest", create=True)
        assert made is not None and len(made.key) == 32 and len(made.key_id) == 16
        key = made.key
    script = (
        "import sys; from pathlib import Path\n"
        "from careledger.keystore import KeyStore, local_token\n"
        "with KeyStore(local_token(Path(sys.argv[1]), sys.argv[2])) as s:\n"
        "    print(s.data_key(s.lookup('urn:oid:1.2.3', 'MRN-000042'), 'report').key.hex())\n"
    )
    again = subprocess.run(
        [sys.executable, "-c", script, str(run_dir), token.label],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert again.returncode == 0, again.stderr
    assert again.stdout.strip() == key.hex()


def test_the_keys_made_in_the_token_cannot_be_read_out(token: TokenConfig) -> None:
    with KeyStore(token, create=True):
        pass
    lib = pkcs11.lib(token.module)
    with lib.get_token(token_label=token.label).open(user_pin=token.pin) as session:
        for label in ("careledger-kek", "careledger-lookup", "careledger-actor"):
            (key,) = list(session.get_objects({Attribute.LABEL: label}))
            assert key[Attribute.EXTRACTABLE] is False and key[Attribute.SENSITIVE] is True
            with pytest.raises(pkcs11.PKCS11Error):
                key[Attribute.VALUE]


def test_a_destroyed_key_cannot_be_unwrapped_and_its_bytes_are_gone_from_the_file(
    token: TokenConfig,
) -> None:
    with KeyStore(token, create=True) as store:
        erased, kept = store.lookup("s", "MRN-1"), store.lookup("s", "MRN-2")
        store.data_key(erased, "ingest", create=True)
        store.data_key(kept, "ingest", create=True)
        wrapped = bytes(
            sqlite3.connect(token.key_file)
            .execute("SELECT wrapped FROM data_keys WHERE lookup = ?", (erased,))
            .fetchone()[0]
        )
        assert wrapped in token.key_file.read_bytes()
        gone = store.destroy(erased)
        assert gone.rows == 1 and gone.complete and gone.confirmed == (store.where,)
        assert store.data_key(erased, "report") is None
        assert store.data_key(kept, "report") is not None  # the others are untouched
        assert store.destroy(erased).rows == 0
    raw = token.key_file.read_bytes()
    assert wrapped not in raw and erased not in raw


def test_a_wrapped_key_moved_to_another_patient_does_not_unwrap(token: TokenConfig) -> None:
    with KeyStore(token, create=True) as store:
        mallory, alice = store.lookup("s", "MRN-M"), store.lookup("s", "MRN-A")
        store.data_key(mallory, "ingest", create=True)
        store.data_key(alice, "ingest", create=True)
    db = sqlite3.connect(token.key_file)
    (stolen,) = db.execute("SELECT wrapped FROM data_keys WHERE lookup = ?", (mallory,)).fetchone()
    db.execute("UPDATE data_keys SET wrapped = ? WHERE lookup = ?", (stolen, alice))
    db.commit()
    db.close()
    with KeyStore(token) as store, pytest.raises(KeyStoreError, match="does not unwrap"):
        store.data_key(alice, "report")


def test_a_wrapped_key_changed_by_one_bit_does_not_unwrap(token: TokenConfig) -> None:
    with KeyStore(token, create=True) as store:
        lookup = store.lookup("s", "MRN-B")
        store.data_key(lookup, "ingest", create=True)
    db = sqlite3.connect(token.key_file)
    (wrapped,) = db.execute("SELECT wrapped FROM data_keys").fetchone()
    changed = bytearray(wrapped)
    changed[20] ^= 0x01
    db.execute("UPDATE data_keys SET wrapped = ?", (bytes(changed),))
    db.commit()
    db.close()
    with KeyStore(token) as store, pytest.raises(KeyStoreError, match="does not unwrap"):
        store.data_key(lookup, "report")


def test_every_unwrap_is_counted_by_purpose_across_restarts(token: TokenConfig) -> None:
    with KeyStore(token, create=True) as store:
        lookup = store.lookup("s", "MRN-C")
        store.data_key(lookup, "ingest", create=True)  # made, not unwrapped
        for _ in range(3):
            store.data_key(lookup, "audit")
        store.data_key(lookup, "re-identification")
        assert store.unwrap_counts() == {"audit": 3, "re-identification": 1}
    with KeyStore(token) as store:
        store.data_key(lookup, "audit")
        assert store.unwrap_counts() == {"audit": 4, "re-identification": 1}


def test_lookups_and_actor_pseudonyms_are_keyed_by_the_token(
    token: TokenConfig, run_dir: Path
) -> None:
    with KeyStore(token, create=True) as store:
        a = store.lookup("s", "MRN-000001")
        assert a == store.lookup("s", "MRN-000001") and a != store.lookup("s", "MRN-000002")
        assert store.lookup("t", "MRN-000001") != a  # the system is part of it
        ref = store.actor_ref("dr.house")
        assert ref == store.actor_ref("dr.house") and len(ref) == 64
    other = local_token(run_dir, f"o{uuid.uuid4().hex[:12]}")  # another deployment's token
    with KeyStore(other, create=True) as store:
        assert store.lookup("s", "MRN-000001") != a  # another token, another key
        assert store.actor_ref("dr.house") != ref


def test_a_token_that_cannot_be_opened_or_lacks_the_keys_is_one_clear_error(
    token: TokenConfig,
) -> None:
    wrong_pin = TokenConfig(token.module, token.label, "0000", token.key_file, token.softhsm_conf)
    with pytest.raises(KeyStoreError, match="cannot open the key store's token"):
        KeyStore(wrong_pin)
    with pytest.raises(KeyStoreError, match="never initialised"):
        KeyStore(token)  # a token without the keys: not made silently
    token.key_file.parent.mkdir(parents=True, exist_ok=True)
    with KeyStore(token, create=True):
        pass
    token.key_file.chmod(0o644)
    with pytest.raises(KeyStoreError, match="readable by group or others"):
        KeyStore(token)


def test_the_pin_comes_from_an_owner_only_file_or_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from careledger.config import Settings

    monkeypatch.delenv("CARELEDGER_KEYSTORE_PIN", raising=False)
    hsm = "/usr/lib/some-hsm/pkcs11.so"  # a production token: its PIN must be given
    with pytest.raises(KeyStoreError, match="needs its token's PIN"):
        TokenConfig.from_settings(Settings(run_dir=tmp_path, keystore_pkcs11_module=hsm))
    pin = tmp_path / "pin"
    pin.write_text("1234\n")
    pin.chmod(0o644)
    with pytest.raises(KeyStoreError, match="group or others"):
        TokenConfig.from_settings(Settings(run_dir=tmp_path, keystore_pin_file=pin))
    pin.chmod(0o600)
    config = TokenConfig.from_settings(Settings(run_dir=tmp_path, keystore_pin_file=pin))
    assert config.pin == "1234" and "1234" not in repr(config)
    assert config.key_file == tmp_path / "keystore" / "keys.db"
    monkeypatch.setenv("CARELEDGER_KEYSTORE_PIN", "5678")
    assert TokenConfig.from_settings(Settings(run_dir=tmp_path)).pin == "5678"


def test_with_softhsm_and_no_pin_configured_the_local_stack_gets_a_token_of_its_own(
    run_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from careledger.config import Settings

    monkeypatch.delenv("CARELEDGER_KEYSTORE_PIN", raising=False)
    label = f"l{uuid.uuid4().hex[:12]}"
    config = TokenConfig.from_settings(Settings(run_dir=run_dir, keystore_token_label=label))
    pin_file = run_dir / "softhsm" / f"{label}.pin"
    assert config.label == label and config.softhsm_conf == run_dir / "softhsm" / "softhsm2.conf"
    assert pin_file.stat().st_mode & 0o777 == 0o600
    assert config.pin == pin_file.read_text().strip() and len(config.pin) == 32
    with KeyStore(config, create=True) as store:
        assert store.count() == 0
    again = TokenConfig.from_settings(Settings(run_dir=run_dir, keystore_token_label=label))
    assert again.pin == config.pin  # the same token on the next start


def test_two_processes_making_a_patients_first_key_at_once_agree_on_the_oldest(
    token: TokenConfig,
) -> None:
    """Both rows stay (a ciphertext under either still opens: it names its key), and
    every later request gets the oldest; destroying the patient takes both."""
    with KeyStore(token, create=True) as first:
        second = first  # one token session per process: the other's row is added below
        lookup = first.lookup("s", "MRN-RACE")
        a = first.data_key(lookup, "ingest", create=True)
        assert a is not None
        # another process made its own key before it could see this one's row
        (row,) = second._rows.rows(lookup)
        b_id, b_key, iv = b"\x00" * 16, b"\x11" * 32, b"\x22" * 12
        wrapped = iv + bytes(
            second._kek.encrypt(
                b_key,
                mechanism=pkcs11.Mechanism.AES_GCM,
                mechanism_param=pkcs11.GCMParams(iv, second._aad(lookup, b_id), 128),
            )
        )
        second._rows.add(KeyRow(lookup, b_id, wrapped, row.created_ns + 1))
        assert second.data_key(lookup, "ingest", create=True) == a
        assert first.data_key(lookup, "report") == a
        keys = first.data_keys(lookup, "report")
        assert [k.key_id for k in keys] == [a.key_id, b_id] and keys[1].key == b_key
        assert first.key(lookup, b_id, "report") == keys[1]
        assert first.key(lookup, b"\x01" * 16, "report") is None
        assert first.destroy(lookup).rows == 2
        assert first.data_keys(lookup, "report") == []


def test_a_key_id_changed_in_the_row_does_not_unwrap(token: TokenConfig) -> None:
    with KeyStore(token, create=True) as store:
        lookup = store.lookup("s", "MRN-SWAP")
        assert store.data_key(lookup, "ingest", create=True) is not None
    db = sqlite3.connect(token.key_file)
    db.execute("UPDATE data_keys SET key_id = ?", (b"\x07" * 16,))
    db.commit()
    db.close()
    with KeyStore(token) as store, pytest.raises(KeyStoreError, match="does not unwrap"):
        store.data_key(lookup, "report")


def test_the_token_leaves_no_openssl_error_behind_to_break_the_next_tls_read(
    token: TokenConfig,
) -> None:
    """SoftHSM2's initialisation leaves an engine error in the thread's OpenSSL queue;
    Python's ssl then reported it on the next ClickHouse read of that thread
    (``[ENGINE: NO_SUCH_ENGINE]``, seen in ``verify`` on a sealed ledger)."""
    import ctypes

    libcrypto = ctypes.CDLL("libcrypto.so.3")
    libcrypto.ERR_peek_error.restype = ctypes.c_ulong
    pkcs11.lib(token.module).reinitialize()  # as a first load does
    assert libcrypto.ERR_peek_error() != 0, "SoftHSM no longer leaves the error: drop the fix?"
    with KeyStore(token, create=True) as store:
        assert libcrypto.ERR_peek_error() == 0
        store.lookup("s", "MRN-TLS")
        assert libcrypto.ERR_peek_error() == 0


def test_a_batch_of_patients_gets_its_keys_at_once_and_the_same_as_one_by_one(
    token: TokenConfig,
) -> None:
    with KeyStore(token, create=True) as store:
        old = store.lookup("s", "MRN-OLD")
        kept = store.data_key(old, "ingest", create=True)
        lookups = [store.lookup("s", f"MRN-{i}") for i in range(20)] + [old, old]
        keys = store.data_keys_for(lookups, "ingest")
        assert set(keys) == set(lookups) and keys[old] == kept
        assert len({k.key_id for k in keys.values()}) == 21  # one new key per new patient
        for lookup in lookups:  # what the one-by-one path says
            assert store.data_key(lookup, "report") == keys[lookup]
        assert store.data_keys_for(lookups, "ingest") == keys  # nothing made twice
        assert store.count() == 21
