#!/usr/bin/env python3
"""A systemd password agent that answers from a file, for tests/vm/guest-luks.

systemd-cryptenroll and systemd-cryptsetup ask for a security token's PIN
through ask_password_auto(): on a terminal when stdin is one, otherwise
through the password agent protocol (systemd's docs/PASSWORD_AGENTS.md):
an ini file /run/systemd/ask-password/ask.XXXX names a datagram socket, an
agent sends "+PASSWORD" (or "-" to cancel) there. This agent does what
systemd-tty-ask-password-agent would, without a terminal: every question
is logged (its Message=, never the answer) and answered with the content
of the answer file, or cancelled when that file is absent.

Usage: ask-password-agent.py ANSWER_FILE LOG_FILE  (runs until killed)
"""

import configparser
import os
import socket
import sys
import time

ASK_DIR = "/run/systemd/ask-password"


def answer_for(answer_file):
    try:
        with open(answer_file) as f:
            return f.read().rstrip("\n")
    except FileNotFoundError:
        return None


def main():
    answer_file, log_file = sys.argv[1], sys.argv[2]
    os.makedirs(ASK_DIR, exist_ok=True)
    answered = set()
    while True:
        for name in sorted(os.listdir(ASK_DIR)):
            if not name.startswith("ask.") or name in answered:
                continue
            path = os.path.join(ASK_DIR, name)
            ini = configparser.ConfigParser(interpolation=None)
            try:
                ini.read(path)
                ask = ini["Ask"]
                sock_path = ask["Socket"]
            except (KeyError, configparser.Error):
                continue  # not complete yet: the asker writes it atomically, but be safe
            answered.add(name)
            answer = answer_for(answer_file)
            with open(log_file, "a") as log:
                log.write("ASK %s (id %s): %s\n" % (
                    ask.get("Message", ""), ask.get("Id", ""), "answered" if answer is not None else "cancelled"))
            reply = ("+" + answer) if answer is not None else "-"
            s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            try:
                s.sendto(reply.encode(), sock_path)
            except OSError as e:
                with open(log_file, "a") as log:
                    log.write("SEND FAILED %s: %s\n" % (sock_path, e))
            finally:
                s.close()
        time.sleep(0.1)


if __name__ == "__main__":
    main()
