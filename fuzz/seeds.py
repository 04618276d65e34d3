"""Writes a few valid inputs for a fuzz target into its corpus directory."""
import struct
import sys


def msg(tag, body=b""):
    return tag + struct.pack(">I", len(body) + 4) + body


def q(sql):
    return msg(b"Q", sql.encode() + b"\0")


extended = (
    msg(b"P", b"s1\0SELECT $1\0\0\x01\0\0\0\x17")
    + msg(b"B", b"\0s1\0\0\x01\0\0\0\x01\0\0\0\x0242\0\0")
    + msg(b"D", b"P\0")
    + msg(b"E", b"\0\0\0\0\0")
    + msg(b"S")
)
bodies = [
    b"s1\0SELECT $1\0\0\x01\0\0\0\x17",
    b"portal\0stmt\0\0\x01\0\x01\0\x01\0\0\0\x04abcd\0\0",
    b"Sname\0",
    b"SELECT 1\0",
    b"SERROR\0C42P01\0Mmissing\0\0",
]
startups = [
    b"\0\0\0\x17\0\x03\0\0user\0app\0database\0db\0\0",
    b"\0\0\0\x08\x04\xd2\x16\x2f",
    b"\0\0\0\x10\x04\xd2\x16\x2e\0\0\0\x01\0\0\0\x02",
    msg(b"Q", b"SELECT 1\0") + msg(b"X"),
]
sessions = []
for db in range(4):
    pick = bytes([db])
    sessions += [
        pick + q("SELECT 1"),
        pick + extended,
        pick + q("BEGIN") + q("SELECT 1") + q("COMMIT"),
        pick + q("INSERT INTO items (family_no, note) VALUES (7, 'x'), (8, 'y')"),
        pick + q("SET search_path = a; PREPARE p AS SELECT 1; EXECUTE p; DEALLOCATE p"),
        pick + msg(b"P", b"\0SELECT * FROM items WHERE family_no = $1\0\0\0") + msg(b"B", b"\0\0\0\0\0\x01\0\0\0\x017\0\0") + msg(b"E", b"\0\0\0\0\0") + msg(b"S"),
        pick + q("COPY items FROM STDIN") + msg(b"d", b"1\tx\n") + msg(b"c"),
    ]
seeds = {"client_messages": bodies, "startup": startups, "session": sessions}[sys.argv[1]]
for i, s in enumerate(seeds):
    with open(f"{sys.argv[2]}/seed{i}", "wb") as f:
        f.write(s)
