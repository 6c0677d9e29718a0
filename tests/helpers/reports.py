"""Bounce and complaint reports as remote MTAs and feedback loops send them."""

from __future__ import annotations

from email.utils import formatdate


def dsn(verp: str, recipient: str, diagnostic: str, message_id: str, padding: int = 0) -> bytes:
    """A Postfix-style DSN for `recipient`, optionally with a large attachment at the end."""
    status = diagnostic.split()[1]
    filler = ("Z" * 998 + "\r\n") * (padding // 1000)
    return (
        "From: MAILER-DAEMON@mx.example.com (Mail Delivery System)\r\n"
        f"To: {verp}\r\n"
        "Subject: Undelivered Mail Returned to Sender\r\n"
        f"Date: {formatdate()}\r\n"
        "Auto-Submitted: auto-replied\r\n"
        "MIME-Version: 1.0\r\n"
        'Content-Type: multipart/report; report-type=delivery-status; boundary="B"\r\n'
        "\r\n--B\r\nContent-Type: text/plain\r\n\r\nYour message could not be delivered.\r\n"
        "--B\r\nContent-Type: message/delivery-status\r\n\r\n"
        "Reporting-MTA: dns; mx.example.com\r\n\r\n"
        f"Final-Recipient: rfc822; {recipient}\r\nAction: failed\r\nStatus: {status}\r\n"
        f"Diagnostic-Code: smtp; {diagnostic}\r\n\r\n"
        "--B\r\nContent-Type: text/rfc822-headers\r\n\r\n"
        f"To: {recipient}\r\nMessage-ID: {message_id}\r\n\r\n"
        f"--B\r\nContent-Type: application/octet-stream\r\n\r\n{filler}\r\n--B--\r\n"
    ).encode()


def arf(recipient: str, original: bytes) -> bytes:
    """An RFC 5965 abuse report quoting the original message's headers."""
    headers = original.split(b"\r\n\r\n", 1)[0]
    return (
        (
            "From: fbl@isp.example.net\r\nTo: complaints@bounces.warta.example\r\n"
            "Subject: Abuse report\r\nMIME-Version: 1.0\r\n"
            'Content-Type: multipart/report; report-type=feedback-report; boundary="F"\r\n'
            "\r\n--F\r\nContent-Type: text/plain\r\n\r\nA user reported this message.\r\n"
            "--F\r\nContent-Type: message/feedback-report\r\n\r\n"
            "Feedback-Type: abuse\r\nUser-Agent: IspFbl/2.1\r\nVersion: 1\r\n"
            f"Original-Rcpt-To: <{recipient}>\r\n\r\n"
            "--F\r\nContent-Type: text/rfc822-headers\r\n\r\n"
        ).encode()
        + headers
        + b"\r\n\r\n--F--\r\n"
    )
