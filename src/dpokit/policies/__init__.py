"""Policies, one room per modality. Generic code never imports from here."""
