"""All models, imported so that Base.metadata knows every table."""

from app.models.api_key import ApiKey
from app.models.base import Base, utcnow
from app.models.bounce import Bounce, BounceScore
from app.models.campaign import Campaign, CampaignLink, CampaignList, CampaignStatus
from app.models.event import Event, EventKind
from app.models.import_job import ImportJob, ImportMode, ImportStatus
from app.models.mailing_list import MailingList, OptIn, Visibility
from app.models.send import OPEN_STATUSES, Send, SendStatus
from app.models.subscriber import Subscriber, SubscriberStatus, Subscription, SubscriptionStatus
from app.models.suppression import Suppression, SuppressionScope
from app.models.template import Template

__all__ = [
    "OPEN_STATUSES",
    "ApiKey",
    "Base",
    "Bounce",
    "BounceScore",
    "Campaign",
    "CampaignLink",
    "CampaignList",
    "CampaignStatus",
    "Event",
    "EventKind",
    "ImportJob",
    "ImportMode",
    "ImportStatus",
    "MailingList",
    "OptIn",
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
    "utcnow",
]
