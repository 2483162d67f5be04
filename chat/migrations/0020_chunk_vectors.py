"""Chunk vectors for dense search (chat.documents.dense): a plain table of float32 blobs.

No vector type and no extension here: the model's dimension is known only once
it loads, and migrations must apply on a PostgreSQL without pgvector and with
dense search off. pgvector's column is added on first use where it is installed.
"""

import django.db.models.deletion
from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('chat', '0019_document_search'),
    ]

    operations = [
        migrations.CreateModel(
            name='ChunkVector',
            fields=[
                ('chunk', models.OneToOneField(on_delete=django.db.models.deletion.CASCADE, primary_key=True, related_name='vector', serialize=False, to='chat.documentchunk')),
                ('model', models.CharField(max_length=500)),
                ('embedding', models.BinaryField()),
                ('document', models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name='+', to='chat.document')),
            ],
            options={
                'indexes': [models.Index(fields=['document', 'model'], name='chunk_vector_document')],
            },
        ),
    ]
