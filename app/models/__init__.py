"""All models, imported so that Base.metadata knows every table."""

from app.models.admin import AdminRole, AdminSession, AdminUser, AuditEntry, EventRollup
from app.models.api_key import ApiKey
from app.models.archive import ArchiveCompaction, ArchivedMessage
from app.models.base import Base, utcnow
from app.models.bounce import Bounce, BounceScore
from app.models.campaign import Campaign, CampaignLink, CampaignList, CampaignStatus
from app.models.event import Event, EventKind
from app.models.import_job import ImportJob, ImportMode, ImportStatus
from app.models.inbound import InboundAttachment, InboundMessage, InboundVerdict
from app.models.mailing_list import MailingList, OptIn, Visibility
from app.models.message import (
    SENDABLE_STATUSES,
    IdempotencyKey,
    Message,
    MessageStatus,
    MessageStream,
)
from app.models.safety import PreflightRecord
from app.models.send import OPEN_STATUSES, Send, SendStatus
from app.models.subscriber import Subscriber, SubscriberStatus, Subscription, SubscriptionStatus
from app.models.suppression import Suppression, SuppressionScope
from app.models.template import Template
from app.models.webhook import DeliveryStatus, EventCursor, WebhookDelivery, WebhookEndpoint

__all__ = [
    "OPEN_STATUSES",
    "SENDABLE_STATUSES",
    "AdminRole",
    "AdminSession",
    "AdminUser",
    "ApiKey",
    "ArchiveCompaction",
    "ArchivedMessage",
    "AuditEntry",
    "Base",
    "Bounce",
    "BounceScore",
    "Campaign",
    "CampaignLink",
    "CampaignList",
    "CampaignStatus",
    "DeliveryStatus",
    "Event",
    "EventCursor",
    "EventKind",
    "EventRollup",
    "IdempotencyKey",
    "ImportJob",
    "ImportMode",
    "ImportStatus",
    "InboundAttachment",
    "InboundMessage",
    "InboundVerdict",
    "MailingList",
    "Message",
    "MessageStatus",
    "MessageStream",
    "OptIn",
    "PreflightRecord",
    "Send",
    "SendStatus",
    "Subscriber",
    "SubscriberStatus",
    "Subscription",
    "SubscriptionStatus",
    "Suppression",
    "SuppressionScope",
    "Template",
    "Visibility",
    "WebhookDelivery",
    "WebhookEndpoint",
    "utcnow",
]
